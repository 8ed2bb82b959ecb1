"""Current hosts: the pack's GUIDER (and the host's own DualCFGGuider) + the host's ``euler`` sampler on the pack's
model_sampling follow the reference DDIM eta=0 trajectory step by step.

Each host Euler step is recorded (x, sigma, denoised) through a probe SAMPLER that wraps the host's own
``sample_euler``; the reference is model/'s ``ddim_sample`` (return_trajectory) over model/'s UNet loaded from the
same file and the graph's own conditioning tensors. Compared per step: the latent in the reference's variable
x_t = x * sqrt(ac_t) s_t, and the x0 estimate (the reference's pred_x0 divided by its dynamic-rescale factor).
The tolerance covers the finite sigma_max the host needs at the zero-SNR step (ac_T = 4.9e-8 instead of 0: the first
x0 estimate moves by sqrt(ac_T)/s * x_T ~ 3e-4 * x_T) and float32 Euler arithmetic at sigma ~ 6000.
"""
from __future__ import annotations

import pytest
import torch

from comfyui_dynamicrafter.tests.nodes import dcn_support as S
from comfyui_dynamicrafter.tests.nodes import tinyckpt

RECORD = []
TRAJ_ATOL = 5e-3


class DCNTestRecordingEuler:
    """Probe SAMPLER: the host's own sample_euler, recording x / sigma / denoised at every step."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get"
    CATEGORY = "testing"

    def get(self):
        import comfy.k_diffusion.sampling as kd
        import comfy.samplers

        def euler(model, x, sigmas, extra_args=None, callback=None, disable=None, **kw):
            def cb(d):
                RECORD.append({"i": d["i"], "x": d["x"].detach().float().cpu().clone(),
                               "sigma": float(d["sigma"]), "denoised": d["denoised"].detach().float().cpu().clone()})
                if callback is not None:
                    callback(d)
            return kd.sample_euler(model, x, sigmas, extra_args=extra_args, callback=cb, disable=disable)

        return (comfy.samplers.KSAMPLER(euler),)


def _guider_graph(which: str, seed: int, steps: int, cfg_text: float, cfg_image: float, rescale: float, nodes):
    if which == "pack":
        guider = {"class_type": "DCN_Guider", "inputs": {
            "model": ["1", 0], "positive": ["6", 0], "image_only": ["6", 1], "negative": ["6", 2],
            "cfg_text": cfg_text, "cfg_image": cfg_image, "guidance_rescale": rescale, "mode": "multi"}}
    else:  # the host's DualCFGGuider, "regular" style = the DynamiCrafter formula (README, first section)
        inputs = {"model": ["1", 0], "cond1": ["6", 0], "cond2": ["6", 1], "negative": ["6", 2],
                  "cfg_conds": cfg_text, "cfg_cond2_negative": cfg_image}
        if "style" in nodes["DualCFGGuider"].INPUT_TYPES()["required"]:
            inputs["style"] = "regular"
        guider = {"class_type": "DualCFGGuider", "inputs": inputs}
    g = S.guider_graph(guider, {"class_type": "DCNTestRecordingEuler", "inputs": {}}, steps, seed)
    S.add_decode(g, ["24", 0], f"dcn_guider_{which}")
    return g


@pytest.mark.parametrize("which,rescale", [("pack", 0.7), ("pack", 0.0), ("host_dual_cfg", 0.0)])
def test_guider_euler_follows_reference_ddim_trajectory(host, dc_guider, which, rescale, record_property):
    if which == "host_dual_cfg" and not host.features.get("dual_cfg_guider"):
        pytest.skip("this host has no DualCFGGuider")
    seed, steps, cfg_text, cfg_image = 9, 8, 7.5, 4.5
    RECORD.clear()
    g = _guider_graph(which, seed, steps, cfg_text, cfg_image, rescale, host.node_class_mappings)
    with host.register_nodes({"DCNTestRecordingEuler": DCNTestRecordingEuler}):
        host.reset_cache()  # the probe sampler must run (and record) again
        res = host.run_prompt(g)
    assert len(res.outputs["9"]["images"]) == S.FRAMES
    assert [r["i"] for r in RECORD] == list(range(steps))
    ref = S.Reference(tinyckpt.checkpoints()["full"], host.node_output("6"))
    x_T = ref.x_T(seed)
    _, traj = ref.sample(seed, steps, eta=0.0, spacing="uniform_trailing", cfg_text=cfg_text, cfg_image=cfg_image,
                         guidance_rescale=rescale, mode="multi", return_trajectory=True)
    s, ac = ref.scales()
    worst_x = worst_x0 = 0.0
    per_step = []
    for i, (rec, step) in enumerate(zip(RECORD, traj)):
        t = step["t"]
        x_ref = x_T if i == 0 else traj[i - 1]["x_prev"]
        sig = torch.tensor(rec["sigma"], dtype=torch.float64)
        x_host = S.to_video(rec["x"]).double() * s[t] / (1 + (sig * s[t]) ** 2).sqrt()
        s_prev = s[traj[i + 1]["t"]] if i + 1 < len(traj) else s[t]
        x0_ref = step["pred_x0"].double() / s_prev
        x0_host = S.to_video(rec["denoised"]).double()
        dx, dx0 = (x_host - x_ref.double()).abs().max().item(), (x0_host - x0_ref).abs().max().item()
        per_step.append((t, dx, dx0))
        worst_x, worst_x0 = max(worst_x, dx), max(worst_x0, dx0)
    out = host.node_output("24")[0][0]["samples"].float() * S.LATENT_SCALE
    final = (out.transpose(0, 1).unsqueeze(0).double() - traj[-1]["pred_x0"].double() / s[traj[-1]["t"]]).abs().max()
    record_property("max_abs_diff_x", worst_x)
    record_property("max_abs_diff_x0", worst_x0)
    print(f"{which} guider + euler vs reference DDIM eta 0 (rescale {rescale}; host {host.info.describe()}): "
          f"max |dx_t| {worst_x:.3g}, max |dx0| {worst_x0:.3g}, final {final:.3g}; per step (t, dx, dx0): "
          + ", ".join(f"({t}, {a:.2g}, {b:.2g})" for t, a, b in per_step))
    assert worst_x < TRAJ_ATOL and worst_x0 < TRAJ_ATOL and final < TRAJ_ATOL
