"""tfm past one machine, on a Ray cluster (pip install 'tfm[ray]'): a file translated by a pool of actors, each holding
one Translator, and tfm serve's API as a Ray Serve deployment of N replicas. docs/SCALING.md says how to run it.

    from tfm.apps.cluster import translate_file_on_ray
    translate_file_on_ray("corpus.txt", "out.txt", model="opus-mt-en-de/", workers=8, address="head:6379")
    # tfm translate --input corpus.txt --output out.txt --ray head:6379 --workers 8
    # tfm serve --ray head:6379 --replicas 4 --host 0.0.0.0

Modules: connect (Ray imported here only, and only when called; the cluster; each actor's cores, GPUs and threads),
batch (LinePool and translate_file_on_ray), deployment (the Serve replicas, deployment and serve_on_ray). Nothing
else in tfm imports Ray, and `import tfm` never does.
"""
from tfm.apps.cluster.batch import LinePool, LineWorker, translate_file_on_ray
from tfm.apps.cluster.connect import actor_options, connected, need_ray
from tfm.apps.cluster.deployment import Replica, deployment, serve_on_ray

__all__ = ["LinePool", "LineWorker", "Replica", "actor_options", "connected", "deployment", "need_ray", "serve_on_ray",
           "translate_file_on_ray"]
