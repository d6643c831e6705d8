"""Stage 3: serving SavedModels, from a frozen graph (`from_frozen`) or a checkpoint
(`from_checkpoint`)."""
