"""Notebook 08's tables: the compute per sampling step in pixel and latent space, and caption adherence.

    python benchmarks/ldm_table.py [--per-caption 10]

Prints (1) parameters, MFLOPs per sample per step, ms per step at batch 16 with CFG, for the latent UNet and its
pixel-space twin, plus the decoder's one-off cost and the compression ratio; (2) shape / colour accuracy (the shipped
shapes classifier) of samples for each of the twelve captions at CFG w = 0, 2, 4 for the latent model, the
pixel-space twin trained on the same FLOPs, and the twin given four times that, with their training steps, compute and
wall time; (3) the text-to-image widget's latency. Saves benchmarks/results/ldm_table.json.
"""
import argparse
import time

import torch

from common import print_table, save
from course import checkpoints, ldm, metrics, widgets


def seconds_per_step(model, shape, context, repeats=7):
    x = torch.randn(shape)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model(torch.cat([x, x]), 500, encoder_hidden_states=torch.cat([context, context]))
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-caption", type=int, default=10, help="samples per caption for the accuracy table")
    args = parser.parse_args(argv)
    manifest = checkpoints.read_manifest()
    vae, text_encoder, scaling = ldm.load_shapes_vae(), ldm.load_shapes_clip().text, ldm.load_latent_scaling_factor()

    def load(name):  # an untrained twin still measures compute
        return ldm.load_shapes_ldm(name) if name in manifest else ldm.build_latent_unet(ldm.pixel_unet_config())

    models = {"latent": (ldm.load_shapes_ldm(), vae, (16, 4, 8, 8), "shapes_ldm"),
              "pixel": (load("shapes_pixel"), None, (16, 3, 32, 32), "shapes_pixel"),
              "pixel, 4x training": (load("shapes_pixel_long"), None, (16, 3, 32, 32), "shapes_pixel_long")}
    context = ldm.encode_prompts(text_encoder, ["a red circle"] * 16)
    compute, mflops = [], {}
    for name, (unet, _, shape, _) in list(models.items())[:2]:
        flops = metrics.flops_per_call(lambda: unet(torch.randn(1, *shape[1:]), 500, encoder_hidden_states=context[:1]))
        mflops[name] = flops / 1e6
        compute.append({"space": name, "input": "x".join(map(str, shape[1:])), "parameters": sum(p.numel() for p in unet.parameters()),
                        "MFLOPs_per_sample_step": round(flops / 1e6, 1),
                        "ms_per_step_batch16_cfg": round(1e3 * seconds_per_step(unet, shape, context), 1)})
    decoder = metrics.flops_per_call(lambda: vae.decode(torch.randn(1, 4, 8, 8)))
    compute.append({"space": "decoder (once)", "input": "4x8x8", "parameters": sum(p.numel() for p in vae.decoder.parameters()),
                    "MFLOPs_per_sample_step": round(decoder / 1e6, 1), "ms_per_step_batch16_cfg": ""})
    print_table(compute, "compute per sampling step (compression 3072 -> 256 numbers, 12x)")

    quality = []
    for name, (unet, decoder_vae, _, entry_name) in models.items():
        if entry_name not in manifest:
            print(f"{entry_name} is not shipped: no quality row (python -m course.train {entry_name})")
            continue
        entry = manifest[entry_name]
        for w in (0.0, 2.0, 4.0):
            scores = ldm.text_to_image_accuracy(unet, decoder_vae, text_encoder, scaling, w, args.per_caption)
            train_compute = entry["steps"] * mflops[name.split(",")[0]] / (manifest["shapes_ldm"]["steps"] * mflops["latent"])
            quality.append({"space": name, "train_steps": entry["steps"], "train_compute_vs_latent": round(train_compute, 2),
                            "train_min": round(entry["wall_time_s"] / 60, 1),
                            "cfg_w": w, "shape_acc": scores["shape_accuracy"], "colour_acc": scores["colour_accuracy"],
                            "both_acc": scores["both_accuracy"], "n": scores["samples_scored"]})
    print_table(quality, f"caption adherence ({args.per_caption} samples per caption, DDIM 20 steps, shapes classifier)")

    explorer = widgets.TextToImageExplorer(models["latent"][0], vae, text_encoder, scaling)
    for prompt in ("a blue square", "a yellow triangle", "", "a purple circle"):
        explorer.prompt.value = prompt
    latency = [{"widget": "TextToImageExplorer (4 samples, 20 steps, CFG)", "new_setting_s": round(max(explorer.latencies), 3),
                "median_s": round(sorted(explorer.latencies)[len(explorer.latencies) // 2], 3)}]
    print_table(latency, "widget latency")
    save("ldm_table", compute + quality + latency)


if __name__ == "__main__":
    main()
