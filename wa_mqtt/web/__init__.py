"""The web page's pure parts: who may use it (access.py), what it shows (view.py), and its static files
(static/: plain HTML, CSS and JavaScript, no framework, nothing from the internet). The server is the
extension features/web_page.py."""
