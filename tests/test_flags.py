"""Command lines from entry functions (cluster/api/flags.py): `gallery serve` and the jobs, parsed only."""

import inspect

import pytest

from cluster.api import flags
from cluster.serve import cli
from cluster.serve.cli import serve
from jobs.build_index import build_index
from jobs.enroll import enroll


def job(collection: str, gateway: str = "127.0.0.1:50051", s3_endpoint: str = "", min_growth: float = 2.0,
        force: bool = False, repeats: int = 3) -> None:
    """A job.

    Args:
        collection: the collection id.
        gateway: host:port of the gateway.
        s3_endpoint: S3 endpoint URL; "" for AWS_ENDPOINT_URL, else AWS.
        min_growth: retrain at this growth, >= 1; a long description
            that goes on, and 100 % of it is kept.
        force: train now.
        repeats: how many times.
    """


def test_flags_are_the_keyword_arguments_typed_and_defaulted_from_the_signature():
    parser = flags.parser_for(job, "python -m jobs.job")

    assert vars(parser.parse_args(["--collection", "c"])) == {
        "collection": "c", "gateway": "127.0.0.1:50051", "s3_endpoint": "", "min_growth": 2.0, "force": False,
        "repeats": 3}
    assert vars(parser.parse_args(["--collection", "c", "--min-growth", "4", "--force", "--repeats", "5"])) == {
        "collection": "c", "gateway": "127.0.0.1:50051", "s3_endpoint": "", "min_growth": 4.0, "force": True,
        "repeats": 5}


def test_help_gives_each_description_and_only_the_defaults_that_say_something():
    help_text = " ".join(flags.parser_for(job, "python -m jobs.job").format_help().split())

    assert "A job." in help_text
    assert "--collection COLLECTION the collection id." in help_text
    assert "host:port of the gateway. (default: 127.0.0.1:50051)" in help_text
    assert 'S3 endpoint URL; "" for AWS_ENDPOINT_URL, else AWS. --min-growth' in help_text  # no "(default: )"
    assert "a long description that goes on, and 100 % of it is kept. (default: 2.0)" in help_text
    assert "train now. (default: False)" in help_text


@pytest.mark.parametrize("fn", [enroll, build_index])
def test_every_job_parameter_is_a_flag_and_none_shows_an_empty_default(fn):
    parser = flags.parser_for(fn, f"python -m jobs.{fn.__name__}")
    required = [name for name, p in inspect.signature(fn).parameters.items() if p.default is inspect.Parameter.empty]

    with pytest.raises(SystemExit):
        parser.parse_args([])  # the required flags are missing
    args = vars(parser.parse_args([a for name in required for a in (f"--{name.replace('_', '-')}", "x")]))
    assert args == {name: "x" if p.default is inspect.Parameter.empty else p.default
                    for name, p in inspect.signature(fn).parameters.items()}
    assert "(default: )" not in parser.format_help()


def test_gallery_serve_flags_are_serves_keyword_arguments():
    command, kwargs = cli.parse_args(["serve", "--num-shards", "3", "--store", "s3://bucket/g", "--face-workers", "0"])

    assert command == "serve"
    defaults = {name: p.default for name, p in inspect.signature(serve).parameters.items()}
    assert kwargs == {**defaults, "num_shards": 3, "store": "s3://bucket/g", "face_workers": 0}


def test_gallery_serve_help_shows_no_empty_default(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--help"])

    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gallery serve") and "(default: 2)" in out and "(default: )" not in out


@pytest.mark.parametrize("argv", [["serve", "--bogus"], ["serve", "--num-shards", "2", "stray"]])
def test_an_unknown_flag_is_reported_with_the_commands_usage(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)

    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: gallery serve [-h] [--store STORE]")
    assert f"gallery serve: error: unrecognized arguments: {argv[-1]}" in err
