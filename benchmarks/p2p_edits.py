"""Notebook 08's prompt-to-prompt measurements: re-weighting a word, swapping a word, and the pixel twin's steps.

    python benchmarks/p2p_edits.py [--seeds 16] [--swap-seeds 8]

Prints and saves (benchmarks/results/p2p_edits.json):
(1) re-weighting: for c in {0, 0.5, 1, 2, 4} and each method of ``prompt_to_prompt.REWEIGHT_METHODS``, the shapes
    classifier's probability of the re-weighted word (mean and sd over seeds, and per seed), and of the prompt's other
    word (does the edit keep the rest of the prompt?);
(2) word swap: for each setting of ``prompt_to_prompt.SWAP_SETTINGS``, the shift of the shape's centre (pixels) and the
    mask IoU against the source image, over seeds and three target prompts;
(3) the pixel-space twins at 20 and 100 DDIM steps: caption accuracy, and how far the images move.
"""
import argparse

import torch
from tqdm import tqdm

from common import print_table, save
from course import datasets, ldm, models, prompt_to_prompt

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)
REWEIGHT_PROMPTS = (("a green square", "green", "square"), ("a red circle", "red", "circle"),
                    ("a blue triangle", "blue", "triangle"), ("a yellow circle", "circle", "yellow"))
SWAP_SOURCE, SWAP_TARGETS = "a red circle", ("a blue circle", "a red square", "a yellow triangle")


def mean_sd(values: torch.Tensor) -> tuple[float, float]:
    return round(values.mean().item(), 4), round(values.std().item(), 4) if len(values) > 1 else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16, help="seeds per re-weighting point")
    parser.add_argument("--swap-seeds", type=int, default=8, help="seeds for the word swap")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    unet, vae, text_encoder = ldm.load_shapes_ldm(), ldm.load_shapes_vae(), ldm.load_shapes_clip().text
    scaling, classifier = ldm.load_latent_scaling_factor(), models.load_shapes_classifier()
    seeds = list(range(args.seeds))

    reweighting = []
    jobs = [(p, method) for p in REWEIGHT_PROMPTS for method in prompt_to_prompt.REWEIGHT_METHODS]
    for (prompt, word, other), method in tqdm(jobs, desc="re-weighting"):
        for c in WEIGHTS:
            images = prompt_to_prompt.reweight(unet, vae, text_encoder, prompt, word, c, method, scaling, seeds=seeds)
            with torch.no_grad():
                p_word = prompt_to_prompt.word_probability(classifier, images, word)
                p_other = prompt_to_prompt.word_probability(classifier, images, other)
                shape_logits, colour_logits = classifier(images)
            kind = "colour" if word in datasets.COLOUR_NAMES else "shape"
            names = datasets.COLOUR_NAMES if kind == "colour" else datasets.SHAPE_NAMES
            read_as = (colour_logits if kind == "colour" else shape_logits).argmax(1)
            (p_mean, p_sd), (o_mean, _) = mean_sd(p_word), mean_sd(p_other)
            reweighting.append({"table": "reweight", "prompt": prompt, "word": word, "method": method, "c": c,
                                "p_word_mean": p_mean, "p_word_sd": p_sd, "other_word": other, "p_other_mean": o_mean,
                                "read_as": {n: int((read_as == i).sum()) for i, n in enumerate(names)},
                                "p_word_per_seed": [round(v, 3) for v in p_word.tolist()], "seeds": len(seeds)})
    print_table([{k: (" ".join(f"{n}:{m}" for n, m in v.items()) if k == "read_as" else v) for k, v in r.items()
                  if k not in ("table", "p_word_per_seed")} for r in reweighting],
                f"re-weighting a word by c ({len(seeds)} seeds, CFG w = 2, DDIM 20 steps): classifier's P(word)")

    contribution = prompt_to_prompt.word_contribution(text_encoder, "a green square", "green")
    with torch.no_grad():
        states = ldm.encode_prompts(text_encoder, ["a green square", "a red square"])
    carried = [{"table": "word in the states", "token": i, "green_vs_unk": round(contribution[i].item(), 3),
                "green_vs_red": round((states[0, i] - states[1, i]).norm().item(), 3),
                "state_norm": round(states[0, i].norm().item(), 3)} for i in range(ldm.MAX_TOKENS)]
    print_table(carried, "how far each token's state moves: 'a green square' vs green -> <unk>, vs 'a red square'")

    swap = {setting: {"shift": [], "iou": []} for setting in prompt_to_prompt.SWAP_SETTINGS}
    for seed in tqdm(range(args.swap_seeds), desc="word swap"):
        result = prompt_to_prompt.word_swap_layout(unet, vae, text_encoder, SWAP_SOURCE, SWAP_TARGETS, scaling, seed)
        for setting in swap:
            swap[setting]["shift"].append(result[setting]["centroid_shift_px"])
            swap[setting]["iou"].append(result[setting]["iou"])
    swap_rows = []
    for setting, values in swap.items():
        shift, iou = torch.cat(values["shift"]), torch.cat(values["iou"])
        (s_mean, s_sd), (i_mean, i_sd) = mean_sd(shift), mean_sd(iou)
        swap_rows.append({"table": "word swap", "setting": setting, "centroid_shift_px_mean": s_mean,
                          "centroid_shift_px_sd": s_sd, "iou_mean": i_mean, "iou_sd": i_sd,
                          "pairs": len(shift), "seeds": args.swap_seeds})
    print_table([{k: v for k, v in r.items() if k != "table"} for r in swap_rows],
                f"word swap '{SWAP_SOURCE}' -> {', '.join(SWAP_TARGETS)}: the shape's centre shift and IoU vs the source")

    steps_rows = []
    captions = [c for c in ldm.all_captions() for _ in range(4)]
    for name in ("shapes_pixel", "shapes_pixel_long"):
        twin = ldm.load_shapes_ldm(name)
        images = {steps: ldm.text_to_image(twin, None, text_encoder, captions, 1.0, w=2.0, steps=steps)
                  for steps in tqdm((20, 100), desc=name)}
        for steps, batch in images.items():
            scores = ldm.caption_accuracy(classifier, batch, captions)
            steps_rows.append({"table": "pixel twin steps", "model": name, "ddim_steps": steps,
                               "shape_acc": round(scores["shape_accuracy"], 4),
                               "colour_acc": round(scores["colour_accuracy"], 4),
                               "mean_abs_change_vs_20": round((batch - images[20]).abs().mean().item(), 4),
                               "n": len(captions)})
    print_table([{k: v for k, v in r.items() if k != "table"} for r in steps_rows],
                "pixel-space twins, 20 vs 100 DDIM steps from the same noise (CFG w = 2; images in [-1, 1])")
    save("p2p_edits", reweighting + carried + swap_rows + steps_rows)


if __name__ == "__main__":
    main()
