# Jobs moved here from the inference app (a job exists to produce a message).
# State only: the table keeps its name, inference_inferencejob, and no data
# moves. The content type follows, so admin history and permissions stay.

import django.db.models.deletion
import uuid
from django.db import migrations, models


def move_content_type(apps, schema_editor):
    ContentType = apps.get_model('contenttypes', 'ContentType')
    db = schema_editor.connection.alias
    if not ContentType.objects.using(db).filter(app_label='conversations', model='inferencejob').exists():
        ContentType.objects.using(db).filter(app_label='inference', model='inferencejob').update(
            app_label='conversations'
        )


def move_content_type_back(apps, schema_editor):
    ContentType = apps.get_model('contenttypes', 'ContentType')
    db = schema_editor.connection.alias
    if not ContentType.objects.using(db).filter(app_label='inference', model='inferencejob').exists():
        ContentType.objects.using(db).filter(app_label='conversations', model='inferencejob').update(
            app_label='inference'
        )


class Migration(migrations.Migration):

    dependencies = [
        ('contenttypes', '0002_remove_content_type_name'),
        ('conversations', '0001_initial'),
        ('inference', '0002_move_inferencejob'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='InferenceJob',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('model', models.CharField(max_length=100)),
                        ('queue', models.CharField(max_length=120)),
                        ('params', models.JSONField(blank=True, default=dict)),
                        ('priority', models.PositiveSmallIntegerField(default=5)),
                        ('state', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], db_index=True, default='queued', max_length=16)),
                        ('attempts', models.PositiveIntegerField(default=0)),
                        ('max_attempts', models.PositiveIntegerField(default=3)),
                        ('celery_task_id', models.CharField(blank=True, db_index=True, max_length=64)),
                        ('last_error', models.TextField(blank=True)),
                        ('correlation_id', models.UUIDField(db_index=True, default=uuid.uuid4)),
                        ('cancel_requested', models.BooleanField(default=False)),
                        ('worker', models.CharField(blank=True, max_length=200)),
                        ('started_at', models.DateTimeField(blank=True, null=True)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('message', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='job', to='conversations.message')),
                    ],
                    options={
                        'db_table': 'inference_inferencejob',
                        'ordering': ['-id'],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_type, move_content_type_back),
    ]
