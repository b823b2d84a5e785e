"""/explain's overlay is capped for large films (a 4000x4000 film's full overlay was 10 MB of JSON), unless the
caller asks for the full size; the map itself is unchanged. The cap is on the image in the overlay: the colour
bar's strip (pneumonia.explain.colour_bar_width) stands beside it, never over it."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
from PIL import Image

from pneumonia.explain import OVERLAY_MAX_SIDE, colour_bar_width
from tests.media import gray_of, png


def test_a_large_film_gets_a_capped_overlay_unless_full_is_asked(make_app, sample_images):
    film = Image.fromarray(gray_of(sample_images["NORMAL"][0])).resize((2000, 1500))
    data = png(film)

    async def explain(**params):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app()), base_url="http://t") as client:
            return (await client.post("/explain", params=params, files={"file": ("big.png", data)})).json()

    capped, full = asyncio.run(explain()), asyncio.run(explain(overlay="full"))
    capped_png = Image.open(io.BytesIO(base64.b64decode(capped["heatmap"])))
    full_png = Image.open(io.BytesIO(base64.b64decode(full["heatmap"])))
    capped_height = round(1500 * OVERLAY_MAX_SIDE / 2000)  # aspect kept
    assert capped_png.size == (OVERLAY_MAX_SIDE + colour_bar_width(capped_height), capped_height)
    assert full_png.size == (2000 + colour_bar_width(1500), 1500)
    assert capped["map"] == full["map"] and capped["probability"] == full["probability"]
    assert np.asarray(capped_png).std() > 0
