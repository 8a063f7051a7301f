"""The framework's floor, for bench/pixel_load.py: a Flask app that answers every pixel URL with
the pixel's own GIF and headers and does nothing else. Served from the repository root with the
same gunicorn.conf.py as openreceipt (workers, preload, logger, access log):

    .venv/bin/gunicorn bench.floor:app

No database, no settings: it reads no OPENRECEIPT_* variable (gunicorn.conf.py reads only
OPENRECEIPT_BIND). It sends the X-Openreceipt header, as the pixel does in the benchmark
(OPENRECEIPT_DEBUG_HEADERS=on).
"""

from flask import Flask, Response

from web.pixel.endpoint import GIF, gif_headers

# Same length as the shortest outcomes of the real pixel ("not recorded: repeat ..." is longer).
OUTCOME = "not recorded: floor"

app = Flask(__name__)
app.config["DEBUG_HEADERS"] = True


@app.route("/p/<path:token>", methods=["GET"])
def pixel(token):
    """The pixel's own answer and headers, built per request, and nothing else."""
    return Response(GIF, 200, gif_headers(OUTCOME, debug=True))
