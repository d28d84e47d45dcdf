"""The forker's process, and the children it forks: accept, admit, fork or spawn, reap.

Started by the daemon as `python -P -S -m sockd.forker` (see `start`). Every
module here runs in the forker; the code a child runs after fork() is in
`service` with the library's `sockd.server.ForkingMixIn.fork_request` (fork
per connection), `programs` (the child that execs a program) and `pool`
(pooled workers). Nothing here
imports the daemon's side (`sockd.supervisor`) or anything heavy: the
forker's size is the cost of every fork. This file imports nothing.
"""
