"""The files this toolkit reads and writes: SavedModels, frozen graphs, checkpoint indexes."""
