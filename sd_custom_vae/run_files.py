"""What a training run leaves in its folder, so that eval, push and the model card can find it.

    RUN/
      model/                  CustomAutoencoderKL.save_pretrained: config.json + diffusion_pytorch_model.safetensors
      metrics.json            final validation metrics and what the run did (METRICS_KEYS)
      reconstructions.png     held-out photos: originals, reconstructions, a zoomed detail, the error
      loss_curve.png          one panel per loss term, and validation PSNR
      samples/step-NNNNNN.png the reconstruction grid every --sample-every steps
      checkpoints/step-NNNNNN/  training state for --resume (the newest --keep-checkpoints): CHECKPOINT_FILES
      train_config.json       the full configuration of the run
"""

MODEL_DIR = "model"
METRICS = "metrics.json"
RECONSTRUCTIONS = "reconstructions.png"
LOSS_CURVE = "loss_curve.png"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
TRAIN_CONFIG = "train_config.json"

# inside a checkpoint folder
MODEL_WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
EMA = "ema.pt"  # with --ema-decay
DISCRIMINATOR = "discriminator.safetensors"  # with --disc-weight
DISCRIMINATOR_OPTIMIZER = "disc_optimizer.pt"
STATE = "state.json"  # step, elapsed time and the logged history: what marks a folder as a checkpoint

# metrics.json keys (all optional for readers)
METRICS_KEYS = (
    "psnr", "ssim",  # dB on held-out crops, and SSIM
    "steps", "wall_time_s", "data", "resolution", "preset", "mode", "teacher", "parameters", "scaling_factor",
    "val_crops", "ema", "processes", "mixed_precision", "compile_s",
    "latent_relative_error", "teacher_latent_psnr", "teacher_psnr",  # teacher modes
)
