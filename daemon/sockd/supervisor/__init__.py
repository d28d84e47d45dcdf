"""The daemon's process: command line, config, start-up, its loop, logging, systemd.

It starts and supervises the forker (`sockd.forker`), which it never imports:
the two share only the leaf modules (`sockd.ipc`, `sockd.spec`, `sockd.exits`,
`sockd.listeners`, `sockd.errors`, `sockd.privileges`, `sockd.timers`, `sockd.handlers`).
"""
