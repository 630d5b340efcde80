"""``quicktune ui``: a local web dashboard over the runs folder (runs, curves, evals, exports, chat).

``views`` turns run folders into the JSON the pages show (read-only, no torch), ``server`` serves
it with the standard library's HTTP server, ``chats`` streams llama.cpp answers through
``quicktune.chat``; ``static/`` is the whole front end, uPlot included (no CDN).
"""
