"""Scale-out, generic over what it places: the device `mesh` and its partition rules,
multi-host start-up (`distributed`) and per-device `memory` estimates."""
