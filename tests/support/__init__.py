"""What the tests share: services, processes, data, logs, queues, faults, a faulty backend."""
