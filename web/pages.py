"""The signed-in pages."""

from flask import Blueprint, g, render_template

from .auth import login_required
from .models import Pixel

bp = Blueprint("pages", __name__)


@bp.get("/")
@login_required
def index():
    pixels = (
        Pixel.select()
        .where(Pixel.owner == g.user)
        .order_by(Pixel.created_at.desc(), Pixel.id.desc())
        .limit(50)
    )
    return render_template("index.html", pixels=pixels)
