"""Config tree: overrides, validation errors naming the field, experiments, dict round trip."""

import dataclasses

import pytest

from gbmpo_jax import config as C
from gbmpo_jax import experiment


def test_override_parses_by_field_type():
    cfg = C.override(
        C.Config(),
        **{"optim.lr": "1e-5", "run.steps": "7", "model.remat": "true",
           "lora.targets": "q_proj,v_proj", "task.options": "digits:3,operations:+"},
    )  # fmt: skip
    assert cfg.optim.lr == 1e-5 and cfg.run.steps == 7 and cfg.model.remat is True
    assert cfg.lora.targets == ("q_proj", "v_proj")
    assert cfg.task.options == (("digits", "3"), ("operations", "+"))


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("optim.lrr", "1", "unknown config key 'optim.lrr'"),
        ("nosuch.x", "1", "unknown config key 'nosuch.x'"),
        ("run.steps", "ten", "run.steps='ten': cannot parse"),
        ("optim", "1", "is a section"),
        ("task.options", "digits=2", "'digits=2' must look like name:value"),
    ],
)
def test_override_errors_name_the_key(key, value, needle):
    with pytest.raises(C.ConfigError, match=needle.replace("(", r"\(")):
        C.override(C.Config(), **{key: value})


@pytest.mark.parametrize(
    "key,value,field",
    [
        ("objective.divergence", "kll", "objective.divergence"),
        ("rollout.group_size", 1, "rollout.group_size"),
        ("objective.micro_batches", 3, "objective.micro_batches"),
        ("optim.schedule", "cyclic", "optim.schedule"),
        ("task.name", "nope", "task.name"),
        ("rollout.top_p", 0.0, "rollout.top_p"),
        ("mesh.fsdp", 0, "mesh.fsdp"),
        ("warmup.schedule", "linear", "warmup.schedule"),
        ("warmup.weight_decay", -0.1, "warmup.weight_decay"),
    ],
)
def test_validate_names_field(key, value, field):
    with pytest.raises(C.ConfigError, match=field.replace(".", r"\.")):
        C.validate(C.override(C.Config(), **{key: value}))


def test_dict_round_trip_and_diff():
    cfg = C.override(C.Config(), **{"task.options": (("digits", "3"),), "optim.lr": 2e-5})
    assert C.from_dict(C.to_dict(cfg)) == cfg
    assert C.diff(C.Config(), cfg) == {
        "optim.lr": (3e-5, 2e-5),
        "task.options": ([], [["digits", "3"]]),
    }


def test_every_experiment_and_smoke_variant_validates():
    names = experiment.names()
    for required in ("default", "gsm8k_drgrpo", "gsm8k_probl2", "gsm8k_neural_mirror",
                     "mbpp_drgrpo", "mbpp_probl2", "mbpp_neural_mirror"):  # fmt: skip
        assert required in names
    for name in names:
        full, smoke = experiment.load(name), experiment.load(name + ":smoke")
        C.validate(full)
        C.validate(smoke)
        assert smoke.model.path == "random" and smoke.run.steps == 2
        assert smoke.objective.divergence == full.objective.divergence


def test_paper_settings():
    g, m = experiment.load("gsm8k_probl2"), experiment.load("mbpp_neural_mirror")
    assert (g.lora.rank, g.lora.alpha, g.optim.lr, g.rollout.group_size) == (64, 64.0, 3e-5, 4)
    assert (g.rollout.temperature, g.rollout.top_p, g.run.steps) == (0.6, 0.95, 1000)
    assert g.objective.divergence == "prob_l2" and g.objective.loss_type == "dr_grpo"
    assert (m.optim.lr, m.optim.b2, m.optim.eps, m.optim.schedule) == (1e-5, 0.95, 1e-6, "linear")
    assert (m.rollout.prompts_per_step, m.rollout.group_size, m.rollout.top_k) == (4, 32, 50)
    assert (m.rollout.repetition_penalty, m.rollout.min_new_tokens) == (1.05, 32)
    assert m.objective.coef == 1e-4 and m.lora.rank == 0


def test_unknown_experiment_lists_names():
    with pytest.raises(C.ConfigError, match="valid names: .*gsm8k_probl2"):
        experiment.load("gsm8k_prob")


def test_sections_are_the_core_configs_not_copies():
    """The objective, rollout, optim and lora sections are the classes the core takes: the
    update's StepConfig holds the run config's own objects."""
    from gbmpo_jax import policy
    from gbmpo_jax.models import char_tokenizer, presets
    from gbmpo_jax.rl import lora, losses, optim
    from gbmpo_jax.sampler import sampling

    cfg = C.validate(C.override(C.Config(), **{"objective.divergence": "prob_l2",
                                               "rollout.max_new_tokens": 8}))  # fmt: skip
    assert isinstance(cfg.objective, losses.ObjectiveConfig)
    assert isinstance(cfg.rollout, sampling.SamplingConfig)
    assert isinstance(cfg.optim, optim.OptimConfig) and isinstance(cfg.lora, lora.LoraConfig)
    tok = char_tokenizer.make()
    obj = policy.build_objective(cfg, presets.model_config("tiny", len(tok)), tok)
    assert obj.step_cfg.objective is cfg.objective
    assert obj.step_cfg.lora is None  # rank 0 = full fine-tuning
    # the sampler gets the section with only the tokenizer's ids filled in
    assert obj.sampling == dataclasses.replace(
        cfg.rollout, stop_token_ids=obj.sampling.stop_token_ids,
        pad_token_id=obj.sampling.pad_token_id,
    )  # fmt: skip
    assert obj.sampling.stop_token_ids  # from the tokenizer
    with_lora = C.override(cfg, **{"lora.rank": 4, "lora.alpha": 8.0})
    obj = policy.build_objective(with_lora, presets.model_config("tiny", len(tok)), tok)
    assert obj.step_cfg.lora is with_lora.lora


def test_one_call_sets_fields_that_constrain_each_other():
    cfg = C.override(C.Config(), **{"rollout.max_new_tokens": 16, "rollout.min_new_tokens": 12})
    # lowering both in one call passes through no invalid state
    cfg = C.override(cfg, **{"rollout.min_new_tokens": 2, "rollout.max_new_tokens": 4})
    assert (cfg.rollout.max_new_tokens, cfg.rollout.min_new_tokens) == (4, 2)
    with pytest.raises(C.ConfigError, match=r"rollout\.min_new_tokens=5"):
        C.override(cfg, **{"rollout.min_new_tokens": 5})


def test_checks_read_the_registries(monkeypatch):
    """A name registered in the core is valid config at once: no list written out twice."""
    from gbmpo_jax.rl import divergences

    monkeypatch.setitem(divergences.REGISTRY, "my_div", divergences.REGISTRY["kl"])
    cfg = C.validate(C.override(C.Config(), **{"objective.divergence": "my_div"}))
    assert cfg.objective.divergence == "my_div"
    with pytest.raises(C.ConfigError, match=r"objective\.divergence='kll'.*my_div"):
        C.override(C.Config(), **{"objective.divergence": "kll"})


def test_scan_layers_reaches_the_model_config_and_resumes():
    from gbmpo_jax import policy
    from gbmpo_jax.workdir import checkpoint

    base = C.override(C.Config(), **{"model.path": "random", "model.tokenizer": "char",
                                     "model.random_shape": "tiny"})  # fmt: skip
    for flag in (True, False):
        cfg = C.override(base, **{"model.scan_layers": str(flag).lower()})
        model, _ = policy.load_model_and_tokenizer(cfg)
        assert model.config.scan_layers is flag
    # a speed knob: a checkpoint written with the scan resumes unrolled
    checkpoint.check_compatible(C.to_dict(base), C.override(base, **{"model.scan_layers": "false"}))
