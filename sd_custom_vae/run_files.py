"""What a training run leaves in its folder, so that eval, push and the model card can find it.

    RUN/
      model/                  CustomAutoencoderKL.save_pretrained: config.json + diffusion_pytorch_model.safetensors
      metrics.json            final validation metrics and what the run did (keys below)
      reconstructions.png     originals (top row) vs reconstructions (bottom row) on validation crops
      loss_curve.png          every loss term against the step
      samples/step-NNNNNN.png the same grid, every --sample-every steps
      checkpoints/step-NNNNNN/  training state for --resume (last N kept)
      train_config.json       the full configuration of the run
"""

MODEL_DIR = "model"
METRICS = "metrics.json"
RECONSTRUCTIONS = "reconstructions.png"
LOSS_CURVE = "loss_curve.png"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
TRAIN_CONFIG = "train_config.json"

# metrics.json keys (all optional for readers):
#   psnr (dB, on held-out crops), ssim, steps, data (description of the training images),
#   resolution, preset, wall_time_s, parameters, val_crops, mode ("scratch", "decoder-finetune", "distill")
