"""Models fitted from logs: the interest-migration SimModel and the sequence encoder."""
