"""GraphDef rewrites: placeholders, pruning, Grappler, tables, savers, constants as variables."""
