"""The producer: selects repo ids and sends them to the queue in batches, with backpressure."""
