"""The `openft` client commands (files, jobs, models, chat, data): a terminal front end to an openft server.

Client modules speak HTTP only; they never import the server's layers (api, services, db, jobs), so what
they do is exactly what any SDK user can do. `data check` is the exception that proves it: it runs the
server's validator locally (`openft.datacheck`) and needs no server at all.
"""
