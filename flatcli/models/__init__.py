"""Networks: the built-ins, building by name, matching a state dict, loading a checkpoint, the head split.

:mod:`.builtins` (the architectures), :mod:`.arch_forms` (the ways of naming one, torch-free),
:mod:`.registry` (name -> network), :mod:`.matching` (state dict vs network), :mod:`.loading`
(checkpoint + spec -> :class:`~flatcli.models.loading.LoadedModel`), :mod:`.head` (features and logits
from one forward pass).
"""
