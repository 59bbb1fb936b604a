"""Every task's name, service.action; the API sends by name and never imports worker code."""

DEPLOY = "worker.deploy"
PREDICT = "worker.predict"
SWITCH = "worker.switch"  # load a service's new versions, then serve them
STOP = "scheduler.stop"
SWEEP = "scheduler.sweep"

QUEUES = ("cpu", "gpu", "scheduler")
FLAVORS = ("cpu", "gpu")
