"""The command-line settings of a small `dbb-hf demo` (200 toy training images, one epoch, two
sampling steps): the demo-diffusion tests and the Space's run-folder tests run it."""

SMALL = [
    "--options", "num_train=200", "num_validation=40", "num_test=40", "correlation=0.98",
    "--erm_num_epochs", "1", "--retraining_num_epochs", "1",
    "--selection_lowest_loss", "6,6", "--selection_ti_num_images", "4",
    "--textual_inversion_max_train_steps", "2", "--textual_inversion_train_batch_size", "2",
    "--inpainting_num_inference_steps", "2", "--inpainting_batch_size", "4",
    "--pruning_n_steps", "4", "--num_grid_examples", "4", "--shard_size", "8",
]
