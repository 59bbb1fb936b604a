"""The transport of sync predictions between the API and the workers.

One way in, one way back, whatever the deployment: the API pushes a frame (a JSON header and the
image's bytes) on the flavor's Redis list and waits on a reply key of its own with a bounded
BLPOP; a worker's lane threads BRPOP frames, run the model and push the answer on that key.

    frames.py    the codecs: Frame (API -> worker) and Answer (worker -> API)
    client.py    LaneClient, the API's side (the API imports only this)
    consumer.py  LaneConsumer, the worker's side (the worker imports only this)
    bus.py       the service layer's Celery messages (deploy, stop, unload)
"""
