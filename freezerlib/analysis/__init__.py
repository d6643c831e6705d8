"""What a model would do when loaded or served: unsafe ops, signatures that write state."""
