"""Jobs: the runner that owns a job's lifecycle, the queues and the Huey tasks."""
