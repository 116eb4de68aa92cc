"""The worker: consumer (fetch, leases, dispatch), pools, and the one executor a task runs in."""
