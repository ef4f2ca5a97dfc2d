"""CNN compression: low-rank decomposition of conv layers (L1-LRAR, NL2A, VH2), cost and latency.

`defense-cli compress` runs `command.compress`; `decompose.decompose_model` is the library entry.
"""
