from django.urls import path

from tests.django.orders import views

urlpatterns = [path("orders", views.create_order)]
