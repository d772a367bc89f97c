from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=100)
    email = models.EmailField()
    receipt_sent = models.BooleanField(default=False)
    fraud_score = models.FloatField(null=True)
