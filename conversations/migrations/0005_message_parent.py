# Messages get a parent (conversations as trees: edit and regenerate as branches).
# Existing conversations were lines: each message's parent is the message before
# it in its conversation, so every reply keeps the history it had (everything
# before it, by id).

import django.db.models.deletion
from django.db import migrations, models


def parent_is_the_previous_message(apps, schema_editor):
    Message = apps.get_model('conversations', 'Message')
    previous = (
        Message.objects.filter(conversation_id=models.OuterRef('conversation_id'), id__lt=models.OuterRef('id'))
        .order_by('-id')
        .values('id')[:1]
    )
    Message.objects.using(schema_editor.connection.alias).update(parent_id=models.Subquery(previous))


class Migration(migrations.Migration):

    dependencies = [
        ('conversations', '0004_apikey_default_priority'),
    ]

    operations = [
        migrations.AddField(
            model_name='message',
            name='parent',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='children', db_constraint=False, to='conversations.message'),
        ),
        migrations.RunPython(parent_is_the_previous_message, migrations.RunPython.noop),
    ]
