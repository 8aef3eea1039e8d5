from flatcli.cli import run

run()
