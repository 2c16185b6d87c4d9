"""Generated gRPC modules of ``clip.proto`` (``clipserve.v1``); see ``scripts/gen_proto.py``."""
