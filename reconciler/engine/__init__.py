"""The engine both adapters drive: pure decisions (core), the poller scheduler, the practice engine, the event sink, the cursor store and metrics. No Kopf, no Kubernetes client, no aiohttp."""
