"""Distil a small, fast student from a teacher VAE, then use it in the teacher's pipeline.

    python examples/distill_student.py --teacher path/to/sd-vae --model stable-diffusion-v1-5/stable-diffusion-v1-5

A VAE trained from scratch has its own latent space, which a pretrained UNet does not understand.
A student trained to reproduce the teacher's latents (encoder) and to decode them (decoder)
inherits the teacher's latent space and `scaling_factor`, so it drops into the teacher's pipeline.
The teacher is any VAE `sd-custom-vae convert` reads: a diffusers folder, an LDM/A1111 file, ...
"""

import argparse

import torch
from diffusers import StableDiffusionPipeline

from sd_custom_vae.data import builtin_photos, evaluation_crops, load_images
from sd_custom_vae.evaluation.quality import evaluate_vaes, format_table
from sd_custom_vae.models import load_vae
from sd_custom_vae.models.pipeline import inject_vae
from sd_custom_vae.training import load_config, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="the VAE whose latent space the student learns")
    parser.add_argument("--model", default=None, help="SD pipeline (folder or Hub id) to generate with; optional")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--output", default="runs/student")
    args = parser.parse_args(argv)

    # 1. Distil: the `student` preset is the teacher's depth at a quarter of its width.
    result = train(load_config("student", teacher=args.teacher, steps=args.steps, output=args.output))

    # 2. Check it stands in for the teacher: latent error and decode quality on held-out photos.
    teacher = load_vae(args.teacher, dtype=torch.float32)
    student = load_vae(result.output / "model")
    crops = evaluation_crops(load_images(builtin_photos()[1], 256), 256, per_image=1)
    reports, _ = evaluate_vaes({"student": student, "teacher": teacher}, crops, teacher=teacher)
    print(format_table(reports))

    # 3. Use it: the teacher's pipeline with the student as its VAE.
    if args.model:
        pipe = inject_vae(StableDiffusionPipeline.from_pretrained(args.model), student)
        image = pipe("a photo of a dog", num_inference_steps=25, generator=torch.Generator().manual_seed(0)).images[0]
        image.save(result.output / "student_dog.png")
        print(f"wrote {result.output / 'student_dog.png'}")


if __name__ == "__main__":
    main()
