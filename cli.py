"""Command-line entry point: `slfer <command>`.

Each command only parses its options and calls one function of the pipeline
or the model package. Heavy modules (torch, h5py, dlib) are imported inside
the commands so that `slfer --help` stays fast.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from slfer_model.variants import VARIANTS

DATASET_FORMATS = ("rafdb", "sfew", "folder", "csv")


def dataset_options(function):
    """Attach the options that select and read a labelled dataset."""
    function = click.option(
        "--skip-unknown", is_flag=True,
        help="Skip and count samples whose label is not one of the seven classes, instead of failing.",
    )(function)
    function = click.option(
        "--label-order", default=None, metavar="NAMES",
        help="CSV only: comma-separated class names giving the meaning of integer labels 0, 1, ...",
    )(function)
    function = click.option(
        "--format", "dataset_format", type=click.Choice(DATASET_FORMATS), required=True,
        help="Dataset layout: rafdb, sfew, folder (ROOT/<split>/<class>/*) or csv (path,label[,split]).",
    )(function)
    function = click.argument("root", type=click.Path(exists=True, path_type=Path))(function)
    return function


def exit_with(code: int) -> None:
    """Leave the command with `code` without a traceback."""
    sys.exit(code)


# Exit status of a command stopped by Ctrl-C (SIGINT), as shells report it.
INTERRUPTED_STATUS = 130


@contextmanager
def continue_hint(hint: str):
    """Turn Ctrl-C into exit status 130 and log one line on how to continue."""
    try:
        yield
    except KeyboardInterrupt:
        logging.getLogger("slfer").error("interrupted: %s", hint)
        sys.exit(INTERRUPTED_STATUS)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.version_option(package_name="slfer")
def main(verbose: bool) -> None:
    """slfer: facial expression recognition trained with face-parsing semantics."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


@main.command("inspect-dataset")
@dataset_options
@click.option("--check-images", is_flag=True, help="Decode every image and report unreadable ones.")
@click.option("--workers", type=click.IntRange(min=0), default=4, show_default=True,
              help="Processes that decode images with --check-images (0 decodes in this process).")
def inspect_dataset_command(root, dataset_format, label_order, skip_unknown, check_images, workers):
    """Count samples per split and class, and report skipped, missing and unreadable files."""
    from pipeline.inspect import inspect_dataset

    exit_with(inspect_dataset(
        root, dataset_format, label_order=label_order, skip_unknown=skip_unknown,
        check_images=check_images, workers=workers,
    ))


@main.command("parse-masks")
@dataset_options
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for masks/, reports/ and parser.json.")
@click.option("--parser", "parser_name", type=click.Choice(("bisenet", "landmarks")), default="bisenet",
              show_default=True, help="BiSeNet face parsing (needs weights) or dlib 68-point landmarks (offline).")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="BiSeNet weights file (parsing_bisenet.pth); default: the cache folder, then a download.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per BiSeNet forward pass (default: 16 on CUDA, 1 on the CPU, where it is fastest).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Processes that decode images and run the landmark parser "
                   "(default: up to 4, one per core; 0 for BiSeNet on the CPU, where the model needs every core).")
@click.option("--class-map", type=click.Path(exists=True, path_type=Path), default=None,
              help="JSON file mapping the parser's labels to the 8 parts (default: data/bisenet19_to_slfer8.json).")
@click.option("--face-box", type=click.Choice(("whole", "detect")), default="whole", show_default=True,
              help="Landmark parser: use the whole image as the face box, or run dlib's face detector.")
@click.option("--num-shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the dataset into this many disjoint parts for separate processes.")
@click.option("--shard-index", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which part this process handles, 0 to --num-shards minus 1.")
@click.option("--overwrite", is_flag=True, help="Parse again images that already have a mask.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Parse at most this many images, evenly spaced over splits and classes.")
@click.option("--save-raw", is_flag=True, help="BiSeNet only: also save the 19-class mask beside the 8-part one.")
def parse_masks_command(root, dataset_format, label_order, skip_unknown, **options):
    """Give every image an 8-part face-parsing mask (PNG) and write a JSONL report."""
    from pipeline.parse_masks import parse_masks

    with continue_hint("finished masks are kept, so run the same command again to parse the rest"):
        exit_with(parse_masks(
            root, dataset_format, label_order=label_order, skip_unknown=skip_unknown, **options,
        ))


@main.command("build-shards")
@dataset_options
@click.option("--masks", "masks_dir", type=click.Path(exists=True, path_type=Path), required=True,
              help="The --out folder of parse-masks.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for the HDF5 shards and manifest.json.")
@click.option("--size", type=click.IntRange(min=16), default=256, show_default=True,
              help="Stored image and mask side in pixels.")
@click.option("--top-n", type=click.IntRange(min=1, max=7), default=4, show_default=True,
              help="Number of dominant non-background parts marked 1 in the part vector.")
@click.option("--shard-size", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Samples per shard file.")
@click.option("--codec", type=click.Choice(("raw", "gzip", "jpeg")), default="raw", show_default=True,
              help="How images are stored: raw uint8 pixels, the same pixels gzip-compressed, or JPEG bytes "
                   "(quality 95).")
@click.option("--workers", type=click.IntRange(min=0), default=4, show_default=True,
              help="Processes that decode and resize images.")
@click.option("--overwrite", is_flag=True, help="Replace shards that already exist in --out.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Pack at most this many images, evenly spaced over splits and classes "
                   "(the same images as parse-masks --limit).")
def build_shards_command(root, dataset_format, label_order, skip_unknown, **options):
    """Pack images, masks, labels and top-n part vectors into checked HDF5 shards."""
    from pipeline.shard_writer import build_shards

    with continue_hint("finished shards are kept, so run the same command again to write the rest"):
        exit_with(build_shards(
            root, dataset_format, label_order=label_order, skip_unknown=skip_unknown, **options,
        ))


@main.command("verify")
@click.argument("shards_dir", type=click.Path(exists=True, path_type=Path))
def verify_command(shards_dir):
    """Re-check the sha256, schema and counts of a shard folder and read every sample."""
    from pipeline.shard_verify import verify_shards

    exit_with(verify_shards(shards_dir))


@main.command("train")
@click.option("--shards", "shards_dir", type=click.Path(exists=True, path_type=Path), default=None,
              help="Folder written by build-shards.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Run folder for config, metrics, checkpoints and curves.")
@click.option("--config", "config_file", type=click.Path(exists=True, path_type=Path), default=None,
              help="YAML file of training settings; options given here override it.")
@click.option("--variant", type=click.Choice(tuple(VARIANTS)), default=None,
              help="Ablation variant (default proposed: ST + CT + SE).")
@click.option("--no-se", is_flag=True, default=None,
              help="Build the backbone without SE blocks, which only the proposed variant has.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs (default 40).")
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="Images per step (default 16).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Adam learning rate (default 1e-4).")
@click.option("--betas", default=None, metavar="B1,B2", help="Adam betas (default 0.5,0.999).")
@click.option("--milestones", default=None, metavar="E1,E2,...",
              help="Epochs after which the learning rate is multiplied by --gamma (default 10,18,25,32).")
@click.option("--gamma", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning-rate decay factor at each milestone (default 0.1).")
@click.option("--crop-size", type=click.IntRange(min=32), default=None,
              help="Random crop at training and centre crop at test, in pixels (default 224).")
@click.option("--lambda-seg", type=click.FloatRange(min=0), default=None,
              help="Weight of the segmentation (ST) loss (default 0.5).")
@click.option("--lambda-part", type=click.FloatRange(min=0), default=None,
              help="Weight of the part classification (CT) loss (default 0.5).")
@click.option("--pretrained", default=None, metavar="none|imagenet|PATH",
              help="Backbone initialisation (default none): a torchvision-layout ResNet-18 state dict "
                   "or an slfer checkpoint such as RUN/best.pt.")
@click.option("--train-split", default=None, help="Shard split to train on (default train).")
@click.option("--val-split", default=None, help="Shard split to validate on each epoch (default: test, else val).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader workers (default: up to 4, one per core).")
@click.option("--seed", type=int, default=None, help="Random seed (default 0).")
@click.option("--deterministic/--no-deterministic", default=None,
              help="Use deterministic algorithms so that reruns match exactly.")
@click.option("--limit-batches", type=click.IntRange(min=1), default=None,
              help="Stop each epoch after this many training batches (smoke runs).")
@click.option("--resume", is_flag=True, default=None, help="Continue the run in --out from last.pt.")
def train_command(config_file, **options):
    """Train the SLFER network (or an ablation variant) from HDF5 shards."""
    from slfer_model.train import train

    overrides = {name: value for name, value in options.items() if value is not None}
    with continue_hint("the last finished epoch is in RUN/last.pt, so add --resume to the same command to continue"):
        exit_with(train(config_file, overrides))


@main.command("evaluate")
@click.option("--shards", "shards_dir", type=click.Path(exists=True, path_type=Path), required=True,
              help="Folder written by build-shards.")
@click.option("--checkpoint", "checkpoints", type=click.Path(exists=True, path_type=Path),
              required=True, multiple=True,
              help="Checkpoint file (RUN/best.pt); repeat to evaluate several and print one comparison.")
@click.option("--split", default=None,
              help="Shard split to evaluate (default: test when the shards have it, else val).")
@click.option("--tta-flip", is_flag=True,
              help="Average the softmax probabilities of each image and its mirror image.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for report.json, predictions.csv, confusion.csv and confusion.png "
                   "(default: CHECKPOINT_FOLDER/eval-SPLIT; with several checkpoints, one subfolder per run).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per forward pass (twice as many go through the network with --tta-flip).")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader worker processes that read the shards (0 reads in this process).")
def evaluate_command(**options):
    """Report accuracy, per-class metrics and the confusion matrix of a checkpoint."""
    from slfer_model.evaluate import evaluate

    with continue_hint("files already written are complete, so run the same command again"):
        exit_with(evaluate(**options))


@main.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def compare_command(runs):
    """Print accuracy and mean class accuracy of several evaluated runs as one table."""
    from slfer_model.compare import compare_runs

    exit_with(compare_runs(runs))


if __name__ == "__main__":
    main()
