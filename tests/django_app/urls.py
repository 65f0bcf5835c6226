from django.contrib import admin
from django.urls import path

from pgqueue.contrib.django.dashboard import dashboard_urls

urlpatterns = [path("admin/", admin.site.urls), path("queue/", dashboard_urls())]
