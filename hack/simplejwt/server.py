#!/usr/bin/python3
"""Reference djangorestframework-simplejwt server for keyward's compatibility test.

A minimal Django project in one file: simplejwt's four views under /api/token/, refresh
rotation and blacklist-after-rotation on, the token_blacklist app, SQLite in a temporary
directory, and two users created at startup: alice/wonderland (active) and carol/through
(inactive). It listens on 127.0.0.1 on the port given as the first argument (0 picks a free
port) and prints "READY <port>" once it accepts connections. Run it with Debian's
/usr/bin/python3 (python3-djangorestframework-simplejwt 5.2.2).
"""

import os
import sys
import tempfile
from datetime import timedelta
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import django
from django.conf import settings

# The SQLite database goes to $SIMPLEJWT_DIR (the Go test passes a directory it removes).
WORKDIR = os.environ.get("SIMPLEJWT_DIR") or tempfile.mkdtemp(prefix="simplejwt-")

settings.configure(
    DEBUG=False,
    SECRET_KEY="keyward-compat-test-only-not-a-secret-0123456789abcdef",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "rest_framework",
        "rest_framework_simplejwt.token_blacklist",
    ],
    MIDDLEWARE=[],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(WORKDIR, "db.sqlite3"),
            "OPTIONS": {"timeout": 20},
        }
    },
    PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
    USE_TZ=True,
    DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    REST_FRAMEWORK={"UNAUTHENTICATED_USER": None},
    SIMPLE_JWT={
        "ACCESS_TOKEN_LIFETIME": timedelta(minutes=5),
        "REFRESH_TOKEN_LIFETIME": timedelta(days=1),
        "ROTATE_REFRESH_TOKENS": True,
        "BLACKLIST_AFTER_ROTATION": True,
        "UPDATE_LAST_LOGIN": False,
    },
)
django.setup()

from django.urls import path  # noqa: E402
from rest_framework_simplejwt.views import (  # noqa: E402
    TokenBlacklistView,
    TokenObtainPairView,
    TokenRefreshView,
    TokenVerifyView,
)

urlpatterns = [
    path("api/token/", TokenObtainPairView.as_view()),
    path("api/token/refresh/", TokenRefreshView.as_view()),
    path("api/token/verify/", TokenVerifyView.as_view()),
    path("api/token/blacklist/", TokenBlacklistView.as_view()),
]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def main():
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    call_command("migrate", verbosity=0, interactive=False)
    User.objects.create_user("alice", password="wonderland")
    carol = User.objects.create_user("carol", password="through")
    carol.is_active = False
    carol.save()

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    httpd = make_server("127.0.0.1", port, get_wsgi_application(),
                        server_class=ThreadingWSGIServer, handler_class=QuietHandler)
    print("READY %d" % httpd.server_address[1], flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
