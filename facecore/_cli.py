"""Shared CLI plumbing: project errors become one readable line and a non-zero exit."""

from __future__ import annotations

import functools
import sys

import click

from .errors import FacePrivacyError


def friendly_errors(func):
    """Decorator for click commands: print ``error: <message>`` and exit 2 on project errors."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except FacePrivacyError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            click.echo(f"error: {exc.strerror or exc}: {exc.filename}", err=True)
            sys.exit(2)
        except OSError as exc:  # full disk, file-size limit, I/O errors: one line, not a traceback
            from .tempfiles import describe_os_error

            click.echo(f"error: {describe_os_error(exc, exc.filename or 'the output')}", err=True)
            sys.exit(2)
        except EOFError as exc:  # click would print "Aborted!": an input file ended early
            click.echo(f"error: unexpected end of file ({exc or 'truncated input'})", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("error: interrupted; partial outputs were removed", err=True)
            sys.exit(130)

    return wrapper


def recognizer_option(func):
    """``--recognizer NAME|PATH.onnx`` plus explicit preprocessing for raw ONNX paths."""
    func = click.option("--std", type=float, default=None, help="Preprocessing std (raw .onnx only).")(func)
    func = click.option("--mean", type=float, default=None, help="Preprocessing mean (raw .onnx only).")(func)
    func = click.option("--channel-order", type=click.Choice(["RGB", "BGR"]), default=None,
                        help="Channel order the model expects (raw .onnx only).")(func)
    func = click.option("--recognizer", "-r", default="fr128", show_default=True,
                        help="Built-in name (fr128, fr512), adapter name, or path to an .onnx recognizer.")(func)
    return func


def build_recognizer(recognizer: str, channel_order, mean, std):
    from .errors import InvalidInputError
    from .recognizers import create_recognizer

    kwargs = {k: v for k, v in {"channel_order": channel_order, "mean": mean, "std": std}.items() if v is not None}
    if kwargs and not recognizer.endswith(".onnx"):
        options = ", ".join(f"--{k.replace('_', '-')}" for k in kwargs)
        raise InvalidInputError(f"{options}: for a raw .onnx recognizer only; {recognizer!r} brings its own preprocessing")
    return create_recognizer(recognizer, **kwargs)


def plugins_command(registries: dict[str, str]) -> click.Command:
    """A ``plugins`` command listing the names of each registry (``{title: "module:REGISTRY"}``, imported when run)."""
    from .registry import import_object

    @click.command("plugins")
    @friendly_errors
    def plugins() -> None:
        """List the registered recognizers, backends, methods, ... (built-ins and installed plug-ins)."""
        for title, target in registries.items():
            registry = import_object(target)
            eps = registry.entry_points()
            names = [f"{n} ({eps[n].dist.name if eps[n].dist else eps[n].value})" if n in eps else n for n in registry.names()]
            click.echo(f"{title}: {', '.join(names)}")

    return plugins
