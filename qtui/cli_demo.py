"""``qtui demo PLAYLIST.yaml``: check the playlist (one line naming the bad step, nothing played),
then open the app on the Demo screen, which prepares the variants and plays the steps."""

from __future__ import annotations

import argparse

from qtui.cli_common import EXIT_OK


def register(sub) -> None:
    d = sub.add_parser("demo", help="play a demo playlist into side-by-side columns (space, b, p)")
    d.add_argument(
        "playlist", nargs="?", default=None, help="a playlist YAML (default: assets/demo/sample.yaml)"
    )
    d.add_argument(
        "--check", action="store_true", help="check the playlist and print its steps; play nothing"
    )
    d.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from engine import demo

    playlist = demo.load_playlist(args.playlist or demo.SAMPLE)  # a DemoError is one line, exit 1
    if args.check:
        print(f"{playlist.title}: {len(playlist.steps)} steps; variants {', '.join(playlist.labels)}")
        for i, step in enumerate(playlist.steps):
            pause = "waits for space" if step.pause is None else f"goes on after {step.pause:g} s"
            print(f"  {i + 1}. {step.title}: {step.prompt!r} ({pause})")
        return EXIT_OK
    make_app(playlist).run()
    return EXIT_OK


def make_app(playlist, service=None, **kwargs):
    """The app opened on the Demo screen with ``playlist``, preparing at once."""
    from qtui.app import QtuiApp
    from qtui.screens.demo import DemoScreen

    class DemoApp(QtuiApp):
        def on_mount(self) -> None:  # Textual runs QtuiApp.on_mount too, after this: push after it
            self.call_later(self.push_screen, DemoScreen(playlist, autostart=True))

    return DemoApp(service=service, autoload=False, **kwargs)
