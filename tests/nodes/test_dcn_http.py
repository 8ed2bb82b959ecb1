"""The full image -> video graphs over the host's real HTTP server on 127.0.0.1: POST /prompt, then poll /history."""
from __future__ import annotations

import time

from comfyui_dynamicrafter.tests.nodes import dcn_support as S


def test_image_to_video_interpolation_and_loop_over_http(host_server):
    srv = host_server()
    S.install(srv.model_dirs, srv.dirs["input"])
    t0 = time.monotonic()
    with srv:
        started = time.monotonic() - t0
        node_types = srv.get("/object_info/DCN_Sampler")
        assert "DCN_Sampler" in node_types, "the server did not load the pack"
        for kind, kw in S.GRAPHS.items():
            g = S.add_exact_sampler(S.conditioning_graph(**kw), steps=3, prefix=f"dcn_http_{kind}")
            res = srv.run_prompt(g, timeout=300)
            images = res.outputs["9"]["images"]
            assert len(images) == S.FRAMES, (kind, res.outputs)
            assert all(i["filename"].startswith(f"dcn_http_{kind}") for i in images)
            assert res.history["status"]["completed"]
    print(f"HTTP server ({srv.info.describe()}): started in {started:.1f} s, 3 graphs in "
          f"{time.monotonic() - t0 - started:.1f} s")
