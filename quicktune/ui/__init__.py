"""``quicktune ui``: a local web dashboard over the runs folder (runs, curves, evals, exports, promotions, chat).

``views`` turns run folders into the JSON the pages show (read-only, no torch, nothing a symlink takes out
of the runs folder), ``server`` serves it with the standard library's HTTP server, ``guard`` decides who
may ask (the launch's key, the Host names, same origin only), ``chats`` streams llama.cpp answers through
``quicktune.chat``; ``static/`` is the whole front end, uPlot included (no CDN).

It writes one thing: a promotion (the run page's Promote button), through ``quicktune.promote.promote``,
the function ``quicktune runs promote`` calls, and only for a request from its own page (its Origin
and the token the server wrote into that page, derived from the launch's key: see ``guard``).
"""
