"""Placeholder until the shared-text attention processor lands (issue 3)."""


class TiUECrossAttnProcessor:  # pragma: no cover - replaced by the kernels work
    pass


def install_shared_text_attention(module) -> int:
    return 0
