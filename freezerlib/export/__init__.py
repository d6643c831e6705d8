"""Stage 3: serving SavedModels, from a frozen graph (`from_frozen`) or a checkpoint
(`from_checkpoint`, and `from_tf2_checkpoint` for TF2 structures and checkpoints)."""

import dataclasses


@dataclasses.dataclass
class ExportReport:
  """What the checkpoint path wrote: where, how many tensors and bytes of how many.

  Attributes:
    path: the SavedModel written (OUTPUT/<version> with a version).
    tensors_exported, tensors_in_checkpoint: tensors written, of the checkpoint's.
    bytes_exported, bytes_in_checkpoint: their stored bytes, of the checkpoint's.
    seconds: wall time.
    checkpoint_object: TF2: the model's object path in the checkpoint ('' for the root).
    matched_by: TF2: how the structure was matched to it ('path' or 'full name').
    bytes_needed: TF2: the model's tensors as stored, each once, and the object graph.
  """
  path: str
  tensors_exported: int
  tensors_in_checkpoint: int
  bytes_exported: int
  bytes_in_checkpoint: int
  seconds: float
  checkpoint_object: str = ''
  matched_by: str = ''
  bytes_needed: int = 0
