"""Commands of this module are added by the issue that builds them."""
import click


def register(cli: click.Group) -> None:
    pass
