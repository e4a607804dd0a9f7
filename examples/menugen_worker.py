"""MenuGen's background worker: the handlers `scalemule worker --handlers menugen_worker` runs.

The walkthrough (examples/menugen.py) starts it with the worker agent's own key. Each handler receives
the job's payload and a context: ``ctx.progress(fraction, message)`` (also extends the lease),
``ctx.cancelled`` (set when someone calls jobs_cancel), storage access in the worker's tenant, and
``ctx.secret(env, name)`` for the secrets the worker was granted (render_dish_image's IMAGE_API_KEY).

There is no vision model here: describing a dish stands in for the minutes-long call to one.
"""

from __future__ import annotations

import json
from typing import Any

import anyio

from scalemule.worker import Handlers, JobContext, PermanentError

handlers = Handlers()

# What the stand-in model "reads" on the photo of Chez Mule's menu.
DISHES = [
    ("Soupe à l'oignon", "onion soup under a lid of gruyère toast"),
    ("Salade niçoise", "tuna, olives, green beans and a soft egg"),
    ("Coq au vin", "chicken braised in red wine with mushrooms"),
    ("Ratatouille", "slow-cooked summer vegetables with thyme"),
    ("Tarte Tatin", "caramelised apple tart, served warm"),
]


@handlers("describe_dishes")
async def describe_dishes(payload: Any, ctx: JobContext) -> Any:
    """Describe every dish on a menu photo; write the descriptions to storage, report progress per dish."""
    photo = await ctx.get_object(payload["photo"])
    if not photo.startswith(b"\x89PNG"):
        raise PermanentError(f"{payload['photo']} is not a PNG image")  # retrying cannot fix this
    described = []
    for done, (name, description) in enumerate(DISHES, start=1):
        await anyio.sleep(0.2)  # the model call
        described.append({"dish": name, "description": description})
        await ctx.progress(done / len(DISHES), f"described {name} ({done}/{len(DISHES)})")
    output = f"menus/{ctx.job_id}/dishes.json"
    stored = await ctx.put_object(output, json.dumps(described, ensure_ascii=False), content_type="application/json")
    return {"output": output, "dishes": len(described), "sha256": stored["sha256"]}


@handlers("render_dish_image")
async def render_dish_image(payload: Any, ctx: JobContext) -> Any:
    """Render one dish's image; the image API times out on the first two attempts."""
    # The worker's key holds a grant on this one secret, not a role that reveals every secret.
    api_key = await ctx.secret(payload.get("env", "dev"), "IMAGE_API_KEY")
    if not api_key:
        raise PermanentError("IMAGE_API_KEY is empty")
    if ctx.attempt < 3:
        raise TimeoutError(f"image API timed out rendering {payload['dish']!r} (attempt {ctx.attempt})")
    return {"dish": payload["dish"], "image": f"images/{payload['dish'].lower().replace(' ', '-')}.png"}


@handlers("render_menu_images")
async def render_menu_images(payload: Any, ctx: JobContext) -> Any:
    """Render every dish's image, slowly; stops early when the job is cancelled."""
    total = int(payload["dishes"])
    for done in range(1, total + 1):
        with anyio.move_on_after(0.5):
            await ctx.cancelled.wait()  # a render step, cut short by a cancel
        if ctx.cancelled.is_set():
            return {"rendered": done - 1, "stopped": "cancelled"}
        await ctx.progress(done / total, f"rendered {done}/{total}")
    return {"rendered": total}
