"""The demos: in process on moto (local) and on a deployed stack (stack, make demo)."""
