"""How much a checkpoint weighs with its frozen VAE inside (the default: self-contained, works offline) and with
the VAE named by Hub id instead (`vae_in_checkpoint=False`).

`lmd-base` (ViT-B encoder, the MAE decoder) around a VAE of Stable Diffusion's size (`stabilityai/sd-vae-ft-mse`'s
architecture, random weights: nothing is downloaded, the size is the same), saved both ways in fp32.

    python benchmarks/checkpoint_size.py --output_dir runs/benchmarks
"""

import os
import tempfile

from common import parser, setup, table, write_results
from modeling_lmd import LMDConfig, LMDForPreTraining


def main(argv=None) -> dict:
    args = parser(__doc__).parse_args(argv)
    setup(args)
    preset = "lmd-tiny" if args.quick else "lmd-base"
    model = LMDForPreTraining(LMDConfig.from_preset(preset))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for vae_in_checkpoint in (True, False):
            model.config.update({"vae_in_checkpoint": vae_in_checkpoint,
                                 "vae_name_or_path": None if vae_in_checkpoint else "stabilityai/sd-vae-ft-mse"})
            lean = LMDForPreTraining(model.config)  # the saved keys are fixed when the model is built
            lean.load_state_dict(model.state_dict())
            path = os.path.join(folder, str(vae_in_checkpoint))
            lean.save_pretrained(path)
            megabytes = os.path.getsize(os.path.join(path, "model.safetensors")) / 1e6
            rows.append(["self-contained (default)" if vae_in_checkpoint else "VAE by Hub id", megabytes])
    parameters = {"vit": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("lmd.vae.")),
                  "vae": sum(p.numel() for p in model.lmd.vae.parameters())}
    markdown = table([f"{preset} checkpoint (fp32)", "model.safetensors (MB)"], rows)
    markdown += f"\nParameters: ViT {parameters['vit'] / 1e6:.1f} M (trained), VAE {parameters['vae'] / 1e6:.1f} M (frozen).\n"
    write_results(args, "checkpoint_size", {"preset": preset, "rows": rows, "parameters": parameters}, markdown)
    return {"rows": rows}


if __name__ == "__main__":
    main()
