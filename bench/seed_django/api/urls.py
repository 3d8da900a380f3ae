"""URL routes of the seed-style API (only the token endpoint is reproduced)."""

from django.urls import path

from . import views

urlpatterns = [
    path("token", views.generate_token, name="token"),
]
