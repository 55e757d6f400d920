"""`tfm serve`: a model as a small HTTP service that answers LibreTranslate's POST /translate, with dynamic batching.

    from tfm.apps.serve import Server
    server = Server(tfm.Translator.bundled(), port=0).start()    # warmed up: every batch shape compiled
    # POST {server.url}/translate  {"q": "3rd of March, 2021", "source": "auto", "target": "en"}
    #   -> {"translatedText": "2021-03-03"}
    server.stop()                                                 # stops accepting, answers what it accepted

Modules: protocol (the JSON API, its fields, limits and Options), batcher (the one model thread and the queue that
batches requests arriving together), server (the HTTP layer: the standard library's ThreadingHTTPServer, routes).
"""
from tfm.apps.serve.batcher import Stats
from tfm.apps.serve.protocol import HTTPError, Options
from tfm.apps.serve.server import Server

__all__ = ["HTTPError", "Options", "Server", "Stats"]
