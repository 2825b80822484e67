"""What a training run leaves in its folder: written by ``training``, read wherever a run is named (``eval``,
``push``, ``convert``, the model card), which is why the layout lives here, below them all.

    RUN/
      model/                    CustomAutoencoderKL.save_pretrained: config.json + diffusion_pytorch_model.safetensors
      metrics.json              final validation metrics and what the run did (training/export.py)
      reconstructions.png       held-out photos: originals, reconstructions, a zoomed detail, the error
      loss_curve.png            one panel per loss term, and validation PSNR
      samples/step-NNNNNN.png   the reconstruction grid every --sample-every steps
      checkpoints/step-NNNNNN/  training state for --resume, the newest --keep-checkpoints (training/checkpoints.py)
      train_config.json         the full configuration of the run
      tracking/                 TensorBoard or wandb logs, with --report-to
"""

MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
RECONSTRUCTIONS = "reconstructions.png"
LOSS_CURVE = "loss_curve.png"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
TRAIN_CONFIG = "train_config.json"
TRACKING_DIR = "tracking"
